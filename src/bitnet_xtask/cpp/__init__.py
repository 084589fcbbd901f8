"""Pinned C++ reference sources (llama.cpp, BitNet) and the tools that verify them."""
