// mcompress sweep SWEEP.yaml -o DIR [--jobs N] [--backend local|slurm] [--partition P --time T --mem M]
// Expands a grid (models x recipes x parameters) into `mcompress run` jobs, runs them with a local
// worker pool or as a Slurm job array, skips jobs whose outputs exist, and writes a combined report
// (sweep.json, sweep.md, sweep.html with a size-versus-quality Pareto chart).
//
//   name: stories260K-ptq
//   models: [{name: s260k, path: ../shared/data/stories260K/stories260K.bin}]
//   recipes: [recipes/w4-g128-gptq.yaml]        # each recipe's first quantize/prune stage gets the
//   params:                                     # parameter values (option: [values]); "" = flag off
//     method: [rtn, gptq]
//     bits: [3, 4]
//   data: {calib: ../shared/data/tinyshakespeare/input.txt, eval: ..., truncate: true, window: 128}
//   threads: 1                                  # per job (default: cores / --jobs)
#include <sys/wait.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cli.h"
#include "model_files.h"
#include "mcompress/error.h"
#include "mcompress/recipe.h"

namespace fs = std::filesystem;

namespace mcli {

namespace {

using json = nlohmann::json;
constexpr const char* kC = "sweep";

struct Job {
  std::string name, model, model_name, recipe_name;
  std::vector<std::pair<std::string, std::string>> params;
  std::string recipe_text;  // the job's recipe (the base with the parameters applied)
  std::vector<std::string> argv;  // mcompress run ... (without the binary)
};

std::string safe(std::string s) {
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.') c = '_';
  return s;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string self_exe() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  if (ec) mc::fail<mc::Error>(kC, "cannot find the mcompress binary (/proc/self/exe)");
  return p.string();
}

// The base recipe with `params` applied to its first quantize or prune stage ("" removes a flag).
std::string apply_params(const std::string& text, const std::string& where,
                         const std::vector<std::pair<std::string, std::string>>& params) {
  YAML::Node y = YAML::Load(text);
  YAML::Node stage;
  for (auto s : y["stages"]) {
    const std::string pass = s.begin()->first.as<std::string>();
    if (pass == "quantize" || pass == "prune") {
      stage = s.begin()->second;
      break;
    }
  }
  if (!stage) mc::fail(kC, where, ": sweep parameters need a quantize or prune stage in the recipe");
  for (const auto& [k, v] : params) {
    if (k == "group-size" && v == "per-channel") {
      stage.remove("group-size");
      stage.remove("group_size");
      stage["per-channel"] = true;
    } else if (v == "true" || v == "false") {
      stage[k] = v == "true";
    } else {
      stage[k] = v;
    }
  }
  YAML::Emitter e;
  e << y;
  return std::string(e.c_str()) + "\n";
}

std::vector<Job> expand(const YAML::Node& y, const std::string& where, const fs::path& out, int threads,
                        std::map<std::string, std::string>& data) {
  if (!y["models"] || !y["models"].IsSequence() || y["models"].size() == 0)
    mc::fail(kC, where, ": 'models' must be a non-empty list of {name, path}");
  if (!y["recipes"] || !y["recipes"].IsSequence() || y["recipes"].size() == 0)
    mc::fail(kC, where, ": 'recipes' must be a non-empty list of recipe files");
  static const std::set<std::string> top = {"name", "models", "recipes", "params", "data", "threads"};
  for (const auto& kv : y)
    if (!top.count(kv.first.as<std::string>()))
      mc::fail(kC, where, ": unknown key '", kv.first.as<std::string>(), "' (allowed: name, models, recipes, params, data, threads)");
  const fs::path base = fs::path(where).parent_path();
  auto resolve = [&](const std::string& p) { return fs::path(p).is_absolute() || fs::exists(p) ? p : (base / p).string(); };
  // The parameter grid, in the file's order.
  std::vector<std::pair<std::string, std::vector<std::string>>> grid;
  if (y["params"]) {
    for (const auto& kv : y["params"]) {
      std::vector<std::string> vals;
      if (kv.second.IsSequence())
        for (const auto& v : kv.second) vals.push_back(v.as<std::string>());
      else
        vals.push_back(kv.second.as<std::string>());
      if (vals.empty()) mc::fail(kC, where, ": parameter '", kv.first.as<std::string>(), "' has no values");
      std::string key = kv.first.as<std::string>();
      std::replace(key.begin(), key.end(), '_', '-');
      grid.emplace_back(key, vals);
    }
  }
  if (y["data"])
    for (const auto& kv : y["data"]) data[kv.first.as<std::string>()] = kv.second.as<std::string>();
  std::vector<Job> jobs;
  for (const auto& m : y["models"]) {
    const std::string mpath = resolve(m["path"].as<std::string>());
    const std::string mname = m["name"] ? m["name"].as<std::string>() : fs::path(mpath).stem().string();
    if (!fs::exists(mpath)) mc::fail(kC, where, ": model '", mpath, "' not found");
    for (const auto& rn : y["recipes"]) {
      const std::string rpath = resolve(rn.as<std::string>());
      const mc::Recipe base_recipe = mc::load_recipe(rpath);  // checks the recipe itself
      std::vector<size_t> idx(grid.size(), 0);
      while (true) {
        Job j;
        j.model = mpath, j.model_name = mname;
        j.recipe_name = base_recipe.name.empty() ? fs::path(rpath).stem().string() : base_recipe.name;
        for (size_t g = 0; g < grid.size(); ++g) j.params.emplace_back(grid[g].first, grid[g].second[idx[g]]);
        j.recipe_text = grid.empty() ? base_recipe.text : apply_params(base_recipe.text, rpath, j.params);
        mc::parse_recipe(j.recipe_text, rpath + " with " + std::to_string(j.params.size()) + " parameters");
        j.name = safe(mname) + "__" + safe(j.recipe_name);
        for (const auto& [k, v] : j.params) j.name += "__" + safe(k) + "-" + safe(v);
        const fs::path dir = out / "jobs" / j.name;
        j.argv = {"run", (dir / "recipe.in.yaml").string(), "--model", fs::absolute(mpath).string(), "-o",
                  (dir / "out").string(), "--threads", std::to_string(threads), "-q"};
        for (const char* k : {"calib", "eval", "tokenizer", "arch"})  // files: absolute, jobs may run elsewhere
          if (data.count(k)) j.argv.insert(j.argv.end(), {std::string("--") + k, fs::absolute(resolve(data[k])).string()});
        for (const char* k : {"window", "max-docs"})
          if (data.count(k)) j.argv.insert(j.argv.end(), {std::string("--") + k, data[k]});
        if (data.count("truncate") && data["truncate"] == "true") j.argv.push_back("--truncate");
        jobs.push_back(j);
        size_t g = 0;
        for (; g < grid.size(); ++g) {
          if (++idx[g] < grid[g].second.size()) break;
          idx[g] = 0;
        }
        if (g == grid.size()) break;
      }
    }
  }
  return jobs;
}

bool job_done(const fs::path& out, const Job& j) {
  return fs::exists(out / "jobs" / j.name / "out" / "report.json") && fs::exists(out / "jobs" / j.name / "exit-code");
}

// Runs the pending jobs `parallel` at a time as child processes; returns their exit codes by name.
void run_local(const std::vector<const Job*>& pending, const fs::path& out, int parallel, bool quiet,
               const mc::EventSink& events) {
  const std::string exe = self_exe();
  size_t next = 0, done = 0;
  std::map<pid_t, const Job*> running;
  const auto t0 = std::chrono::steady_clock::now();
  while (done < pending.size()) {
    while (running.size() < static_cast<size_t>(parallel) && next < pending.size()) {
      const Job* j = pending[next++];
      const fs::path dir = out / "jobs" / j->name;
      const std::string log = (dir / "log.txt").string();
      std::fflush(stdout);  // else the child inherits unflushed output and prints it again
      pid_t pid = ::fork();
      if (pid < 0) mc::fail<mc::Error>(kC, "fork failed");
      if (pid == 0) {
        FILE* f = std::freopen(log.c_str(), "w", stdout);
        if (f) ::dup2(::fileno(stdout), 2);
        std::vector<char*> av;
        av.push_back(const_cast<char*>(exe.c_str()));
        for (const auto& a : j->argv) av.push_back(const_cast<char*>(a.c_str()));
        av.push_back(nullptr);
        ::execv(exe.c_str(), av.data());
        std::_Exit(127);
      }
      running[pid] = j;
    }
    int status = 0;
    pid_t pid = ::wait(&status);
    if (pid < 0) break;
    auto it = running.find(pid);
    if (it == running.end()) continue;
    const int rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    write_file_atomic((out / "jobs" / it->second->name / "exit-code").string(), std::to_string(rc) + "\n", kC);
    ++done;
    if (events.json)
      events.emit("job", json({{"job", it->second->name}, {"exit", rc}, {"done", done}, {"total", pending.size()}}).dump());
    if (!quiet) {
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("[%zu/%zu] %s: %s  (%.0f s, ETA %.0f s)\n", done, pending.size(), it->second->name.c_str(),
                  rc == 0 ? "ok" : rc == 3 ? "gate FAILED" : ("exit " + std::to_string(rc)).c_str(), s,
                  s / double(done) * double(pending.size() - done));
      std::fflush(stdout);
    }
    running.erase(it);
  }
}

std::string run_capture(const std::string& cmd, int* rc) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) mc::fail<mc::Error>(kC, "cannot run: ", cmd);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = ::pclose(p);
  *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

// A job array: one task per pending job, each running its command line from jobs.txt.
void run_slurm(const std::vector<const Job*>& pending, const fs::path& out, const std::string& partition,
               const std::string& time_limit, const std::string& mem, int threads, bool quiet) {
  const std::string exe = self_exe();
  std::string lines;
  for (const Job* j : pending) {
    std::string cmd = shell_quote(exe);
    for (const auto& a : j->argv) cmd += " " + shell_quote(a);
    const fs::path dir = fs::absolute(out / "jobs" / j->name);
    cmd += " > " + shell_quote((dir / "log.txt").string()) + " 2>&1; echo $? > " + shell_quote((dir / "exit-code").string());
    lines += cmd + "\n";
  }
  write_file_atomic((out / "slurm-jobs.txt").string(), lines, kC);
  std::string script = "#!/bin/bash\n#SBATCH --job-name=mcompress-sweep\n";
  script += "#SBATCH --array=0-" + std::to_string(pending.size() - 1) + "\n";
  script += "#SBATCH --cpus-per-task=" + std::to_string(threads) + "\n";
  script += "#SBATCH --output=" + fs::absolute(out / "slurm-%A_%a.log").string() + "\n";
  if (!partition.empty()) script += "#SBATCH --partition=" + partition + "\n";
  if (!time_limit.empty()) script += "#SBATCH --time=" + time_limit + "\n";
  if (!mem.empty()) script += "#SBATCH --mem=" + mem + "\n";
  script += "set -u\nline=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" " + shell_quote(fs::absolute(out / "slurm-jobs.txt").string()) +
            ")\nexec bash -c \"$line\"\n";
  write_file_atomic((out / "sweep.sbatch").string(), script, kC);
  int rc = 0;
  std::string id = run_capture("sbatch --parsable " + shell_quote(fs::absolute(out / "sweep.sbatch").string()) + " 2>&1", &rc);
  id.erase(id.find_last_not_of(" \n\r") + 1);
  if (rc != 0) mc::fail<mc::Error>(kC, "sbatch failed: ", id);
  id = id.substr(0, id.find(';'));
  if (!quiet) std::printf("submitted Slurm job array %s (%zu tasks): %s\n", id.c_str(), pending.size(),
                          (out / "sweep.sbatch").string().c_str());
  // Follow: until squeue no longer lists the array, report as tasks finish.
  size_t reported = 0;
  while (true) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    size_t finished = 0;
    for (const Job* j : pending) finished += fs::exists(out / "jobs" / j->name / "exit-code");
    if (!quiet && finished != reported) {
      std::printf("[%zu/%zu] tasks finished\n", finished, pending.size());
      std::fflush(stdout);
      reported = finished;
    }
    std::string q = run_capture("squeue -h -j " + id + " 2>&1", &rc);
    if (rc == 0 && q.find_first_not_of(" \n") == std::string::npos) break;
    if (rc != 0 && q.find("Invalid job id") != std::string::npos) break;
  }
}

struct Row {
  std::string job, model, recipe, params, gate;
  double size = 0, size_before = 0, bpw = 0, metric = NAN, baseline = NAN, seconds = 0;
  std::string metric_name;
  bool higher = false;
  int rc = -1;
};

std::string svg_pareto(const std::vector<Row>& rows) {
  std::vector<const Row*> pts;
  for (const auto& r : rows)
    if (std::isfinite(r.metric) && r.size > 0) pts.push_back(&r);
  if (pts.empty()) return "<p>no measured jobs</p>";
  const bool higher = pts[0]->higher;
  double x0 = 1e300, x1 = 0, y0 = 1e300, y1 = -1e300;
  for (auto* p : pts) x0 = std::min(x0, p->size), x1 = std::max(x1, p->size), y0 = std::min(y0, p->metric), y1 = std::max(y1, p->metric);
  if (x1 <= x0) x1 = x0 * 1.1 + 1;
  if (y1 <= y0) y1 = y0 + 1e-6;
  const double W = 720, H = 420, L = 70, R = 20, T = 20, B = 50;
  auto X = [&](double v) { return L + (v - x0) / (x1 - x0) * (W - L - R); };
  auto Y = [&](double v) { return T + (y1 - v) / (y1 - y0) * (H - T - B); };
  // Pareto front: smaller and better than every other point.
  std::vector<const Row*> sorted = pts;
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->size < b->size; });
  std::vector<const Row*> front;
  double best = higher ? -1e300 : 1e300;
  for (auto* p : sorted)
    if (higher ? p->metric > best : p->metric < best) front.push_back(p), best = p->metric;
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" font-family=\"sans-serif\" font-size=\"11\">";
  s << "<rect x=\"" << L << "\" y=\"" << T << "\" width=\"" << W - L - R << "\" height=\"" << H - T - B << "\" fill=\"#fafafa\" stroke=\"#ccc\"/>";
  s << "<polyline fill=\"none\" stroke=\"#2a7\" stroke-width=\"2\" points=\"";
  for (auto* p : front) s << X(p->size) << "," << Y(p->metric) << " ";
  s << "\"/>";
  for (auto* p : pts) {
    const bool on = std::find(front.begin(), front.end(), p) != front.end();
    s << "<circle cx=\"" << X(p->size) << "\" cy=\"" << Y(p->metric) << "\" r=\"5\" fill=\"" << (on ? "#2a7" : "#888")
      << "\"><title>" << p->job << ": " << p->metric << "</title></circle>";
  }
  s << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 10 << "\" text-anchor=\"middle\">file size (KiB); green: Pareto front (nothing smaller is better)</text>";
  s << "<text x=\"15\" y=\"" << (T + H - B) / 2 << "\" transform=\"rotate(-90 15 " << (T + H - B) / 2 << ")\" text-anchor=\"middle\">"
    << pts[0]->metric_name << (higher ? " (higher is better)" : " (lower is better)") << "</text>";
  char buf[64];
  for (int i = 0; i <= 4; ++i) {
    const double xv = x0 + (x1 - x0) * i / 4, yv = y0 + (y1 - y0) * i / 4;
    std::snprintf(buf, sizeof buf, "%.0f", xv / 1024);
    s << "<text x=\"" << X(xv) << "\" y=\"" << H - B + 15 << "\" text-anchor=\"middle\">" << buf << "</text>";
    std::snprintf(buf, sizeof buf, "%.4g", yv);
    s << "<text x=\"" << L - 5 << "\" y=\"" << Y(yv) + 4 << "\" text-anchor=\"end\">" << buf << "</text>";
  }
  s << "</svg>";
  return s.str();
}

std::string esc(const std::string& t) {
  std::string o;
  for (char c : t) o += c == '<' ? "&lt;" : c == '>' ? "&gt;" : c == '&' ? "&amp;" : c == '"' ? "&quot;" : std::string(1, c);
  return o;
}

}  // namespace

int cmd_sweep(const std::vector<std::string>& args, mc::EventSink& events) {
  po::options_description desc("sweep options");
  std::string sweep_path, out, backend, partition, time_limit, mem;
  int jobs_n = 1;
  desc.add_options()
      ("sweep", po::value<std::string>(&sweep_path)->required(), "sweep YAML (models, recipes, params, data)")
      ("output,o", po::value<std::string>(&out)->required(), "output directory (jobs/<job>/, sweep.{json,md,html})")
      ("jobs,j", po::value<int>(&jobs_n)->default_value(1), "local backend: jobs run at once")
      ("backend", po::value<std::string>(&backend)->default_value("local"), "local or slurm (a job array via sbatch)")
      ("partition", po::value<std::string>(&partition), "slurm: partition")
      ("time", po::value<std::string>(&time_limit), "slurm: time limit per task (e.g. 00:30:00)")
      ("mem", po::value<std::string>(&mem), "slurm: memory per task (e.g. 4G)")
      ("list", po::bool_switch(), "print the jobs and stop");
  po::positional_options_description pos;
  pos.add("sweep", 1);
  po::variables_map vm;
  CommonOptions common;
  if (!parse_command_line("sweep", "SWEEP.yaml -o DIR [--jobs N] [--backend local|slurm]", args, desc, pos, vm, common, events))
    return 0;
  if (backend != "local" && backend != "slurm") mc::fail(kC, "--backend must be local or slurm");
  if (jobs_n < 1) mc::fail(kC, "--jobs must be >= 1");
  YAML::Node y;
  try {
    y = YAML::LoadFile(sweep_path);
  } catch (const YAML::BadFile&) {
    mc::fail(kC, sweep_path, ": cannot open the sweep file");
  } catch (const YAML::Exception& e) {
    mc::fail(kC, sweep_path, ": not valid YAML: ", e.what());
  }
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const int threads = y["threads"] ? y["threads"].as<int>() : std::max(1, int(cores) / jobs_n);
  std::map<std::string, std::string> data;
  const std::vector<Job> jobs = expand(y, sweep_path, out, threads, data);
  if (vm["list"].as<bool>()) {
    for (const auto& j : jobs) std::printf("%s\n", j.name.c_str());
    return 0;
  }
  fs::create_directories(fs::path(out) / "jobs");
  std::vector<const Job*> pending;
  for (const auto& j : jobs) {
    const fs::path dir = fs::path(out) / "jobs" / j.name;
    fs::create_directories(dir);
    const fs::path rin = dir / "recipe.in.yaml";
    if (!fs::exists(rin) || read_file_text(rin.string()) != j.recipe_text) write_file_atomic(rin.string(), j.recipe_text, kC);
    if (!job_done(out, j)) pending.push_back(&j);
  }
  const std::string name = y["name"] ? y["name"].as<std::string>() : fs::path(sweep_path).stem().string();
  if (!common.quiet)
    std::printf("sweep %s: %zu jobs (%zu done earlier, %zu to run) on the %s backend%s\n", name.c_str(), jobs.size(),
                jobs.size() - pending.size(), pending.size(), backend.c_str(),
                backend == "local" ? (", " + std::to_string(jobs_n) + " at a time, " + std::to_string(threads) + " thread(s) each").c_str() : "");
  const auto t0 = std::chrono::steady_clock::now();
  if (!pending.empty()) {
    if (backend == "local") run_local(pending, out, jobs_n, common.quiet, events);
    else run_slurm(pending, out, partition, time_limit, mem, threads, common.quiet);
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // ---- combined report ----
  std::vector<Row> rows;
  int failed = 0;
  for (const auto& j : jobs) {
    Row r;
    r.job = j.name, r.model = j.model_name, r.recipe = j.recipe_name;
    for (const auto& [k, v] : j.params) r.params += (r.params.empty() ? "" : ", ") + k + "=" + v;
    const fs::path dir = fs::path(out) / "jobs" / j.name;
    if (fs::exists(dir / "exit-code")) r.rc = std::stoi(read_file_text((dir / "exit-code").string()));
    if (fs::exists(dir / "out" / "report.json")) {
      const json rep = json::parse(read_file_text((dir / "out" / "report.json").string()));
      r.size = rep.value("size_after_bytes", 0.0), r.size_before = rep.value("size_before_bytes", 0.0);
      double bits = 0, n = 0;
      for (const auto& l : rep["layers"]) bits += l["bits_per_weight"].get<double>() * l["params"].get<double>(), n += l["params"].get<double>();
      r.bpw = n > 0 ? bits / n : 0;
      for (const auto& m : rep["metrics"])
        if (m["name"] == "bits per byte" || (m.value("primary", false) && r.metric_name.empty()) ||
            m["name"] == "top-1 accuracy") {
          if (!m["compressed"].is_null()) r.metric = m["compressed"], r.metric_name = m["name"];
          if (!m["baseline"].is_null()) r.baseline = m["baseline"];
          r.higher = m.value("higher_is_better", false);
          if (m["name"] == "bits per byte" || m["name"] == "top-1 accuracy") break;
        }
      if (rep["settings"].contains("accuracy gate")) r.gate = rep["settings"]["accuracy gate"].get<std::string>().substr(0, 6);
      for (const auto& s : rep["steps"]) r.seconds += s["seconds"].get<double>();
    }
    if (r.rc != 0 && r.rc != 3) ++failed;
    rows.push_back(r);
  }
  json js = {{"name", name}, {"backend", backend}, {"jobs", jobs.size()}, {"wall_seconds", wall}, {"results", json::array()}};
  for (const auto& r : rows)
    js["results"].push_back({{"job", r.job}, {"model", r.model}, {"recipe", r.recipe}, {"params", r.params},
                             {"exit_code", r.rc}, {"size_bytes", r.size}, {"bits_per_weight", r.bpw},
                             {"metric", r.metric_name}, {"value", std::isfinite(r.metric) ? json(r.metric) : json()},
                             {"baseline", std::isfinite(r.baseline) ? json(r.baseline) : json()},
                             {"gate", r.gate}, {"seconds", r.seconds}});
  write_file_atomic((fs::path(out) / "sweep.json").string(), js.dump(2) + "\n", kC);
  std::ostringstream md;
  md << "# Sweep " << name << "\n\n" << jobs.size() << " jobs, backend " << backend << ", wall time "
     << fmt("%.1f", wall) << " s for the " << pending.size() << " run now.\n\n"
     << "| job | model | recipe | params | size | bits/weight | metric | baseline | gate | exit | s |\n|---|---|---|---|---:|---:|---:|---:|---|---:|---:|\n";
  for (const auto& r : rows)
    md << "| " << r.job << " | " << r.model << " | " << r.recipe << " | " << r.params << " | " << human_bytes(uint64_t(r.size))
       << " | " << fmt("%.3f", r.bpw) << " | " << (std::isfinite(r.metric) ? fmt("%.4f", r.metric) : "") << " | "
       << (std::isfinite(r.baseline) ? fmt("%.4f", r.baseline) : "") << " | " << r.gate << " | " << r.rc << " | "
       << fmt("%.1f", r.seconds) << " |\n";
  write_file_atomic((fs::path(out) / "sweep.md").string(), md.str(), kC);
  std::ostringstream html;
  html << "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>sweep " << esc(name)
       << "</title><style>body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:13px}"
          "td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}</style>"
          "</head><body><h1>Sweep "
       << esc(name) << "</h1><p>" << jobs.size() << " jobs, backend " << esc(backend) << ".</p><h2>Size versus quality</h2>"
       << svg_pareto(rows) << "<h2>Jobs</h2><table><tr><th>job</th><th>size</th><th>bits/weight</th><th>metric</th><th>gate</th><th>exit</th></tr>";
  for (const auto& r : rows)
    html << "<tr><td>" << esc(r.job) << "</td><td>" << human_bytes(uint64_t(r.size)) << "</td><td>" << fmt("%.3f", r.bpw)
         << "</td><td>" << (std::isfinite(r.metric) ? fmt("%.4f", r.metric) : "") << "</td><td>" << esc(r.gate) << "</td><td>"
         << r.rc << "</td></tr>";
  html << "</table></body></html>\n";
  write_file_atomic((fs::path(out) / "sweep.html").string(), html.str(), kC);
  if (!common.quiet)
    std::printf("sweep %s: %zu jobs, %d failed, %.1f s; %s/sweep.md, sweep.html\n", name.c_str(), jobs.size(), failed, wall,
                out.c_str());
  return failed ? 1 : 0;
}

}  // namespace mcli
