"""``caffe.proto``: pycaffe's home of the generated protobuf module.

``fcnwild.caffe.proto.caffe_pb2`` *is* ``fcnwild.base.caffe_pb2`` (one module
object, registered under both names), so messages built through either name
are the same classes and ``isinstance`` checks hold across them.
"""
import sys

from fcnwild.base import caffe_pb2

sys.modules[f"{__name__}.caffe_pb2"] = caffe_pb2
