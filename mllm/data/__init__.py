"""Data readers and writers: webdataset shards, LLaVA conversation JSON, parquet tables, images."""
