"""Weight quantization (量化) from scratch: schemes.py (absmax and zero-point, per tensor, per channel, INT4 groups)
and llm_int8.py (LLM.int8()'s outlier decomposition). Work in progress toward issue 24: the command line
(`python -m mindllm.quant`) and quantized runs come next."""
