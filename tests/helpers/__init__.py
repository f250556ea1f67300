"""Builders of tiny random model folders shared by the tests."""
