"""What this node is and shows: its devices, its key, what it earned, and the status
socket `sparegrid worker status` reads."""
