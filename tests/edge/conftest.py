"""The edge POP integration fixtures (tests/support/edgepop.py), for every test under tests/edge."""

from tests.support.edgepop import client, make_pop, make_upstream, upstream

__all__ = ["client", "make_pop", "make_upstream", "upstream"]
