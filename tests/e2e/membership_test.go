package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cairn-db/cairn/client"
)

// TestMemberAddAndRemove grows a running 3-member cluster to 4 with
// `member add` plus a server started with --initial-cluster-state
// existing, checks the new member serves every earlier write, then removes
// an original member and keeps writing.
func TestMemberAddAndRemove(t *testing.T) {
	c := startCluster(t, 3)
	cl := newClient(t, c, client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range 50 {
		if _, err := cl.Put(ctx, fmt.Sprintf("a%02d", i), "x"); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := c.AddMember()
	if err != nil {
		t.Fatal(err)
	}
	newM := c.Members[idx]
	id, err := cl.MemberAdd(ctx, "http://"+newM.PeerAddr, false)
	if err != nil {
		t.Fatalf("member add: %v", err)
	}
	t.Logf("added member %x at %s", id, newM.PeerAddr)
	if err := c.Restart(idx); err != nil {
		t.Fatal(err)
	}
	one, err := client.New(client.Config{Endpoints: []string{newM.ClientAddr}, AttemptTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	for {
		r, err := one.Get(ctx, "a", client.WithPrefix())
		if err == nil && len(r.KVs) == 50 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("new member never served the earlier writes: %v\n%s", err, c.Log(idx, 3000))
		}
		time.Sleep(50 * time.Millisecond)
	}
	members, err := cl.MemberList(ctx)
	if err != nil || len(members) != 4 {
		t.Fatalf("member list after add: %v %v", members, err)
	}
	// Remove the first original member and stop it.
	victim := members[0]
	if err := cl.MemberRemove(ctx, victim.ID); err != nil {
		t.Fatalf("member remove: %v", err)
	}
	for i, m := range c.Members {
		if m.Name == victim.Name {
			_ = c.Stop(i)
		}
	}
	members, err = cl.MemberList(ctx)
	if err != nil || len(members) != 3 {
		t.Fatalf("member list after remove: %v %v", members, err)
	}
	for i := range 20 {
		if _, err := cl.Put(ctx, fmt.Sprintf("b%02d", i), "y"); err != nil {
			t.Fatalf("write after remove: %v", err)
		}
	}
}
