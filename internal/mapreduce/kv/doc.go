// Package kv holds the intermediate data path of MapReduce: a framed
// key/value file format with an end marker (so a truncated file is detected,
// not silently read short), the map-side Sorter that buffers, sorts,
// combines and spills map output into one sorted file per reduce
// partition, the k-way Merge of sorted files, and Group, which turns a
// sorted stream into (key, values) calls.
package kv
