// Package apps holds Cairn's built-in MapReduce applications, written
// against the same public API a user's own job uses: wordcount, grep
// (matching lines with file and line number), index (inverted index, word
// to documents), sort (records sorted by key, with a sampling range
// partitioner so the concatenated outputs are globally sorted) and
// streaming (any executables as mapper and reducer, as Hadoop Streaming).
package apps
