"""Snapshots: pinned, instantly mountable views of a tree (manifest, storage, the read-only backend)."""
