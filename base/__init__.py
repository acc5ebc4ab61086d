"""fcnwild.base: what every package may import — our caffe.proto and its generated module,
the one error family, atomic file writes, the cache folder. It imports nothing of fcnwild's."""
