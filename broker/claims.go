package broker

// DelegRecord is one hop of a delegation chain, signed by the broker.
type DelegRecord struct {
	Agent       string   `json:"agent"`
	Scope       []string `json:"scope"`
	DelegatedAt string   `json:"delegated_at"`
	Signature   string   `json:"signature"`
}

// Claims are the AgentWrit JWT claims, in upstream's serialization order.
// Claims returned by Verify are shared with the verification cache and must
// not be modified.
type Claims struct {
	Iss             string        `json:"iss"`
	Sub             string        `json:"sub"`
	Aud             []string      `json:"aud,omitempty"`
	Exp             int64         `json:"exp"`
	Nbf             int64         `json:"nbf,omitempty"`
	Iat             int64         `json:"iat"`
	Jti             string        `json:"jti"`
	Sid             string        `json:"sid,omitempty"`
	Scope           []string      `json:"scope"`
	TaskID          string        `json:"task_id,omitempty"`
	OrchID          string        `json:"orch_id,omitempty"`
	DelegationChain []DelegRecord `json:"delegation_chain,omitempty"`
	ChainHash       string        `json:"chain_hash,omitempty"`
}

// DelegationDepth is the number of delegation hops behind the token.
func (c *Claims) DelegationDepth() int { return len(c.DelegationChain) }

// HasAudience reports whether the token is meant for aud: always when aud
// is empty (no audience configured), else when its aud list holds aud.
func (c *Claims) HasAudience(aud string) bool {
	if aud == "" {
		return true
	}
	for _, a := range c.Aud {
		if a == aud {
			return true
		}
	}
	return false
}
