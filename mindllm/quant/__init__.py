"""Weight quantization (量化) from scratch: schemes.py (absmax and zero-point, per tensor, per channel, INT4 groups),
llm_int8.py (LLM.int8()'s outlier decomposition), layers.py (the quantized run's QuantLinear), files.py (a quantized
run on disk), measure.py (`python -m mindllm.bench --quant`) and the command line (`python -m mindllm.quant`)."""
