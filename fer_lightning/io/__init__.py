"""Files on disk: atomic (and disk-full safe) writes, memory-mapped arrays built chunk by chunk with checksums, and
the one file lock."""
