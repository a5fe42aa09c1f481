"""Data modules (on-the-fly synthesis and shards) and safe image I/O."""
