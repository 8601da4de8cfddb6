// Package client is the Go client of the AgentWrit HTTP API, as served by
// this repository's broker and by the upstream AgentWrit broker. It uses
// the broker package's request and response types, so the two agree.
//
// Make one Client per broker; derive clients that act with a token:
//
//	c, err := client.New("https://broker.example")
//	admin, err := c.LoginAdmin(ctx, adminSecret) // the operator
//	lt, err := admin.CreateLaunchToken(ctx, broker.LaunchTokenRequest{
//		AgentName: "report-reader", AllowedScope: []string{"read:data:*"},
//	})
//	agent, err := c.Register(ctx, lt.LaunchToken, []string{"read:data:reports"})
//	req.Header.Set("Authorization", "Bearer "+agent.Token) // call a protected URL
//	err = agent.Client().Release(ctx)                      // done: hand the token back
//
// Register makes the agent's Ed25519 key, answers the broker's challenge
// and registers in one call; RegisterRaw, SignNonce and PublicKey are its
// pieces, for callers that build unusual requests.
//
// A Client is immutable and safe for concurrent use. WithToken, LoginAdmin,
// LoginApp and Agent.Client return new Clients sharing one http.Client.
//
// Every error names the operation. An answer with an error status is an
// *Error carrying the problem details (branch with IsStatus, IsErrorCode
// or errors.As); a success answer that cannot be read wraps
// ErrMalformedAnswer. Neither ever holds a token or a secret.
package client
