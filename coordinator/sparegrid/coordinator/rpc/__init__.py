"""gRPC servicers: decode, authenticate, call one service, encode."""
