"""The tiny offline model: a stage of its own (it trains its tokenizer on data_process's synthetic data)."""
