"""The Sparegrid coordinator: schedules jobs to workers, verifies results, keeps the ledger."""
