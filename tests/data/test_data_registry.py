"""The registry against what the installed recbole ships and publishes."""

from __future__ import annotations

import pytest
import yaml

from blossom.data import registry
from blossom.data.checksums import sha256_file
from blossom.data.formats import FORMATS
from blossom.data.sources import recbole_file
from blossom.errors import BlossomError

# Our dataset name -> the name RecBole 1.2.1 downloads it under.
RECBOLE_NAMES = {"ml-100k": "ml-100k", "ml-1m": "ml-1m", "amazon-beauty": "amazon-beauty",
                 "amazon-video-games": "amazon-video-games", "gowalla": "gowalla-merged"}


@pytest.mark.parametrize("name", sorted(RECBOLE_NAMES))
def test_recbole_urls_are_the_ones_recbole_itself_uses(name):
    published = yaml.safe_load(recbole_file("properties/dataset/url.yaml").read_text())
    urls = {url for source in registry.get(name).sources for url in source.urls}
    assert published[RECBOLE_NAMES[name]] in urls


def test_bundled_ml100k_matches_its_pinned_checksum():
    (source,) = registry.get("ml-100k").sources
    assert sha256_file(recbole_file(source.bundled)) == source.sha256


def test_sources_name_known_formats():
    for spec in registry.DATASETS.values():
        assert {source.fmt for source in spec.sources} <= set(FORMATS)


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(BlossomError) as err:
        registry.get("ml-20m")
    assert str(err.value) == ("unknown dataset 'ml-20m'; valid: amazon-beauty, amazon-video-games, "
                              "gowalla, ml-100k, ml-1m")
