"""The paired-data factory: one stage a file, composed by pipeline.PairSynthesizer."""
