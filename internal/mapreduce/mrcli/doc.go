// Package mrcli implements the MapReduce command line: coordinator,
// worker, submit, status, run and apps. It serves both `cairn mr ...` and
// the Main of a user's own job binary (package mapreduce), which differ
// only in the registry of apps and the command that starts a worker
// process.
package mrcli
