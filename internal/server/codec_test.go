package server

import (
	"bytes"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// TestGogoCodecMatchesDefault checks that the client port's codec puts
// the same bytes on the wire as gRPC's default codec, for etcd's gogo
// messages (its own path, including a value above gRPC's buffer-pooling
// threshold) and for other messages (the fallback), and decodes them back.
func TestGogoCodecMatchesDefault(t *testing.T) {
	def := encoding.GetCodecV2(grpcproto.Name)
	c := newGogoCodec()
	big := bytes.Repeat([]byte("v"), 64<<10)
	for _, tc := range []struct {
		msg  any
		into func() any
	}{
		{&pb.PutRequest{Key: []byte("k"), Value: []byte("v"), PrevKv: true}, func() any { return &pb.PutRequest{} }},
		{&pb.PutRequest{Key: []byte("big"), Value: big}, func() any { return &pb.PutRequest{} }},
		{&pb.RangeResponse{Header: &pb.ResponseHeader{Revision: 7}, Kvs: []*mvccpb.KeyValue{{Key: []byte("a"), Value: []byte("b"), Version: 2}}, Count: 1},
			func() any { return &pb.RangeResponse{} }},
		{&pb.PutResponse{}, func() any { return &pb.PutResponse{} }},
		{wrapperspb.Bytes([]byte("not gogo")), func() any { return &wrapperspb.BytesValue{} }},
	} {
		got, err := c.Marshal(tc.msg)
		if err != nil {
			t.Fatalf("%T: Marshal: %v", tc.msg, err)
		}
		want, err := def.Marshal(tc.msg)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Materialize(), want.Materialize()) {
			t.Fatalf("%T: codec wrote %x, default codec %x", tc.msg, got.Materialize(), want.Materialize())
		}
		back := tc.into()
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(want.Materialize())}, back); err != nil {
			t.Fatalf("%T: Unmarshal: %v", tc.msg, err)
		}
		again, _ := def.Marshal(back)
		if !bytes.Equal(again.Materialize(), want.Materialize()) {
			t.Fatalf("%T: decoded message re-encodes differently", tc.msg)
		}
		got.Free()
		want.Free()
	}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer([]byte{0x0a, 0x80})}, &pb.PutRequest{}); err == nil {
		t.Fatal("a truncated message decoded without an error")
	}
}
