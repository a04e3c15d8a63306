"""MERES on ROS 2: a lifecycle node (`node`), its Image / depth helpers (`conversions`, `geometry`),
the frame -> targets step it shares with `replay` and `demo` (`pipeline`), and a client that drives
a running node from another process (`client`)."""
