"""Near-duplicate filter (`wsl data dedup`): keep evaluation images out of training data.

views        decoding, frame cutting, the evaluation images' indexed views
copies       the edits of a web copy (bench labels, calibration copies)
descriptors  the Descriptor interface: `dct` (weight-free default), `learned` (checkpoint)
search       the FAISS index of the evaluation side, threshold calibration
sets         how --against/--train name a set: DIR or NAME=DIR; opening one
config       the stage's configuration (DedupConfig and its parts)
scan         the index, the threshold, the streaming scan of training shards
finish       joining the shards' results: --self, the chain rule, outputs
run          the stage: --part/--merge, resuming, index, scan, finish
report       report.html
apply        --apply OUT: filtered shards with the manifest's `dedup` record
"""
