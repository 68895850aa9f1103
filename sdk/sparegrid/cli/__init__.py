"""The `sparegrid` command line: job and admin commands, the demo, and the coordinator
and worker groups their packages register."""
