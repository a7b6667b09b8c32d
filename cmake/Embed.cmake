# cprd_embed_text(TARGET_VAR FILE SYMBOL): turns a text file into a C source
# defining `const char SYMBOL[]`, so the IDL is compiled into the binary.
function(cprd_embed_text out_var input symbol)
  get_filename_component(abs "${input}" ABSOLUTE)
  set(out "${CMAKE_CURRENT_BINARY_DIR}/${symbol}.c")
  add_custom_command(
    OUTPUT "${out}"
    COMMAND ${CMAKE_COMMAND} -DIN=${abs} -DOUT=${out} -DSYM=${symbol}
            -P "${PROJECT_SOURCE_DIR}/cmake/EmbedRun.cmake"
    DEPENDS "${abs}" "${PROJECT_SOURCE_DIR}/cmake/EmbedRun.cmake"
    COMMENT "Embedding ${input}")
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()
