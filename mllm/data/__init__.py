"""Data readers and writers: caption shards (webdataset, parquet, JSONL), LLaVA conversation JSON, parquet
tables, images."""
