"""What fedrisk starts on a host stays fedrisk's: child processes that end with their parent, listening
sockets on loopback, and the certificates its servers and clients authenticate with (a development CA).
Imports nothing of the project, so every package may use it."""
