"""Image I/O: ``decode`` (the one decoder, for paths, bytes, PIL images and arrays), ``paths``
(input files, folders and globs), ``outputs`` (sample and grid files, written atomically), ``png``
(a streaming PNG writer for whole photos)."""
