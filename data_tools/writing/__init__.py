"""The write pass of `wsl data build`, shared by `wsl data convert`: records → verified shards.

Two streaming passes over the input, so memory does not grow with the number of images
(only the per-synset counts do): the count pass canonicalises tags and counts images per
synset; the write pass sends fixed-size groups of records to worker processes, each of
which writes one whole shard. Shard i always holds the same records, so
- a re-run skips every shard whose stats file exists and ends with the same manifest,
- `--part i/N` builds shards i, i+N, i+2N, ... (a SLURM array builds a billion images),
  and `wsl data merge` joins the parts' manifests into the one manifest.json.

dataset   write_dataset: both passes, end to end
count     the count pass
plan      which records each shard holds (input or hash order)
workers   the workers that write one shard each, and resuming
output    the output directory: checks, the build's fingerprint, cleaning up
The manifest is data_tools/format/manifest.py's.
"""
from data_tools.writing.dataset import write_dataset

__all__ = ["write_dataset"]
