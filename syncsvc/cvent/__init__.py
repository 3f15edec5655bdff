"""The Conference API: resource catalog, response codes, client and streaming parser."""
