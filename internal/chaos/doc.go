// Package chaos runs Cairn as a cluster of containers and tests it the way
// Jepsen tests etcd: concurrent clients record a history of register and
// append-only list operations while a seeded schedule partitions the
// network (docker network disconnect, or a fault-injecting proxy that
// every peer and client connection passes), kills, freezes and restarts
// members, adds latency and connection loss, and replaces members. After
// the last heal it checks that the cluster recovers within a bound, that
// the history is linearizable (porcupine), and that every acknowledged
// append is present exactly once. On a violation it saves the history,
// the porcupine visualization, the fault timeline and every member's log
// in one directory.
//
// Docker is driven through its CLI (os/exec); nothing here needs an image
// registry. See docs/reliability.md.
package chaos
