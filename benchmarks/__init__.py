"""Benchmarks: pfs measured side by side with rclone mount, s3fs, the raw backend and the local disk.

    python -m benchmarks run [--quick] [--scenarios ...] [--clients ...] [--out DIR]

Modules: config (sizes, names), datasets (generated data, cached), servers (the S3 server), clients/ (one
adapter per client), io (the one read/write code path), measure (page cache, CPU, RSS), scenarios (the
workloads and phases), runner (one run, cleanup on any exit), results and report (json, Markdown, charts).
Only public surfaces of pfs are used (its command line, mount points and control xattrs); nothing here
asserts a speed.
"""
