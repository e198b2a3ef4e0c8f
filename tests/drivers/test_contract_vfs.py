"""The contract suite (lamina.drivers.testsuite) against vfs."""

from lamina.drivers.testsuite import make_contract_tests

globals().update(make_contract_tests("vfs"))
