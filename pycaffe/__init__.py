"""pycaffe's API (``import caffe``) on fcnwild: placeholder package docstring."""
