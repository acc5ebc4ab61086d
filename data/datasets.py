"""Dataset specs: ``open_dataset("cityscapes:/data/cityscapes", split="val")``.

A spec is ``FAMILY:ROOT``, optionally followed by ``?key=value&key=value``
options for the reader (``cityscapes:/data/cs?cities=aachen,bremen``,
``synthia-seqs:/data/SYNTHIA?season=summer``). Keyword options given to
``open_dataset`` override those in the spec. New families (the synthetic
benchmark) join through ``register_dataset``.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable
from urllib.parse import parse_qsl

from fcnwild.base.errors import DatasetError
from fcnwild.data.base import SegmentationDataset
from fcnwild.data.bdd import BDDDataset, ImageFolderDataset
from fcnwild.data.cityscapes import CityscapesDataset
from fcnwild.data.gta5 import GTA5Dataset
from fcnwild.data.synthetic import synthetic_dataset
from fcnwild.data.synthia import SynthiaRandDataset, SynthiaSeqsDataset

# factory(root, split, **options) -> SegmentationDataset
DatasetFactory = Callable[..., SegmentationDataset]

_FACTORIES: dict[str, DatasetFactory] = {}


def register_dataset(family: str, factory: DatasetFactory) -> None:
    """Make ``family:ROOT`` specs open datasets built by ``factory(root, split, **options)``."""
    if family in _FACTORIES and _FACTORIES[family] is not factory:
        raise DatasetError(f"dataset family '{family}' is already registered")
    _FACTORIES[family] = factory


def dataset_families() -> list[str]:
    return sorted(_FACTORIES)


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """Split ``FAMILY:ROOT?k=v`` into (family, root, options)."""
    family, sep, rest = spec.partition(":")
    if not sep or not family or not rest:
        raise DatasetError(f"dataset spec {spec!r}: expected FAMILY:ROOT with FAMILY one of "
                           f"{', '.join(dataset_families())}")
    root, _, query = rest.partition("?")
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise DatasetError(f"dataset spec {spec!r}: options after '?' must read key=value&key=value") from None
    return family, root, options


def open_dataset(spec: str, split: str | None = None, **options: Any) -> SegmentationDataset:
    """Open a dataset from a spec; see the module docstring for the spec grammar."""
    family, root, spec_options = parse_spec(spec)
    factory = _FACTORIES.get(family)
    if factory is None:
        raise DatasetError(f"unknown dataset family '{family}' in {spec!r}; expected one of "
                           f"{', '.join(dataset_families())}")
    merged = {**spec_options, **{k: v for k, v in options.items() if v is not None}}
    accepted = [name for name, p in inspect.signature(factory).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(merged) - set(accepted))
    if unknown:
        raise DatasetError(f"dataset '{family}' has no option {', '.join(unknown)}; its options: "
                           f"{', '.join(accepted) or 'none'}")
    return factory(root, split, **merged)


for _family, _factory in {
    "cityscapes": CityscapesDataset,
    "gta5": GTA5Dataset,
    "synthia": SynthiaRandDataset,
    "synthia-seqs": SynthiaSeqsDataset,
    "bdd": BDDDataset,
    "folder": ImageFolderDataset,
    "synthetic": synthetic_dataset,
}.items():
    register_dataset(_family, _factory)
