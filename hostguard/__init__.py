"""What fedrisk starts on a host stays fedrisk's: child processes that end with their parent, and
listening sockets on loopback. Imports nothing of the project, so every package may use it."""
