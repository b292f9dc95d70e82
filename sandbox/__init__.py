"""Local stand-ins for the outside world: an SFTP server and a partner file generator."""
