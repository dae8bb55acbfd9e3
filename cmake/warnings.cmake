# mc_warnings(target): the warning set every project target builds with.
function(mc_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
endfunction()
