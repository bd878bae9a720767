"""What an auditor reads: the hash-chained ledger and its vocabulary of entries, incident
records and evidence, and the section-12 figures computed from the ledger."""
