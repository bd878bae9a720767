"""Compile and sign: packs into plans (canonical JSON DAGs), DSSE signatures, trust files,
locks, and drawings of the DAG."""
