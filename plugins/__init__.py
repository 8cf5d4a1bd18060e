"""Built-in rankly plugins, loaded through the `rankly` entry-point group like any other."""
