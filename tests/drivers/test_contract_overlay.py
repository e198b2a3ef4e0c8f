"""The contract suite (lamina.drivers.testsuite) against overlay (root and overlayfs)."""

from lamina.drivers.testsuite import make_contract_tests

globals().update(make_contract_tests("overlay"))
