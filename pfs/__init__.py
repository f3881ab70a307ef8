"""pfs: a shared POSIX filesystem for machine-learning training over object storage, HDFS and local dirs."""

__version__ = "0.1.0"
