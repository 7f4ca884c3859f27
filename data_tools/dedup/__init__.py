"""Near-duplicate filter (`wsl data dedup`): keep evaluation images out of training data.

views        decoding, frame cutting, the evaluation images' indexed views
copies       the edits of a web copy (bench labels, calibration copies)
descriptors  the Descriptor interface: `dct` (weight-free default), `learned` (checkpoint)
search       the FAISS index of the evaluation side, threshold calibration
sets         how --against/--train name a set: DIR or NAME=DIR
run          config, streaming scan of training shards, --part/--merge, --self, outputs
report       report.html
apply        --apply OUT: filtered shards with the manifest's `dedup` record
"""
