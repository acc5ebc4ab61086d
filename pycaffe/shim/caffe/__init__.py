"""Opt-in shim: with the folder holding this ``caffe/`` on ``PYTHONPATH`` (printed by
``fcnwild pycaffe --shim-path``), ``import caffe`` and its submodules are fcnwild.caffe.

This folder is data of fcnwild.caffe, never installed as a top-level ``caffe``.
"""
from fcnwild.caffe.importer import install_caffe_alias

install_caffe_alias()
