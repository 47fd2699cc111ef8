"""localagg: Local Aggregation (Zhuang, Zhai, Yamins, ICCV 2019) as a library.

The library knows nothing of DVC, params files or the command line: the pipeline layer
(`stages/`) reads params and calls into it.
"""

__version__ = "0.1.0"
