# Script half of cprd_embed_text(): IN, OUT and SYM come from -D.
file(READ "${IN}" hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
file(WRITE "${OUT}" "/* Generated from ${IN}; do not edit. */\n"
     "const char ${SYM}[] = {${body} 0x00};\n")
