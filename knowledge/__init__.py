"""The company's documents: readers per format, chunking, the index, hybrid retrieval, sync."""
