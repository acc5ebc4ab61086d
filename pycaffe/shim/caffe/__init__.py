"""Opt-in shim: with the folder holding this ``caffe/`` on ``PYTHONPATH`` (printed by
``fcnwild pycaffe --shim-path``), ``import caffe`` and its submodules are fcnwild.caffe.

This folder is data of fcnwild.caffe, never installed as a top-level ``caffe``.
"""
from fcnwild.caffe._caffe import init_log
from fcnwild.caffe.importer import install_caffe_alias

install_caffe_alias()
# As in pycaffe, whose glog writes to stderr until a script initialises it: the log of
# nets and solvers (iterations, losses, tests) shows without a call to init_log.
init_log()
