"""A1111 prompt syntax and weighted, chunked prompt encoding."""
